"""A sweep that reuses work across eps versus the same cells run independently, in one run.

Run:  python benchmarks/bench_sweep_reuse.py [--model cnn] [--attack pgd] [--steps 20] [-n 200]

Both runs use the same model, samples (the first n test digits, class-interleaved), attack,
seed and eight epsilons; the reusing sweep carries samples fooled at a smaller eps (re-checked
by a forward pass) and warm-starts the rest from their smaller-eps points. Prints, per eps,
the success rate of each and the time and backward passes of both runs.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit.sweep import SweepSpec, run_sweep

EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--attack", default="pgd")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--constraints", default="linf")
    parser.add_argument("-n", type=int, default=200)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    print(
        f"model {args.model}, attack {args.attack} ({args.steps} steps), constraints {args.constraints} & box, "
        f"n {args.n}, eps {EPS}, torch threads {torch.get_num_threads()}"
    )
    runs = {}
    for label, reuse in (("independent", False), ("reused", True)):
        spec = SweepSpec(
            models=[args.model],
            attacks=[args.attack],
            eps=EPS,
            n=args.n,
            constraints=args.constraints,
            reuse=reuse,
            attack_params={args.attack: {"steps": args.steps}},
        )
        start = time.perf_counter()
        result = run_sweep(spec, progress=False)
        runs[label] = (time.perf_counter() - start, result.table)
    rows = []
    for i, eps in enumerate(EPS):
        a, b = runs["independent"][1].iloc[i], runs["reused"][1].iloc[i]
        rows.append(
            {
                "eps": eps,
                "success independent": round(a["success_rate"], 3),
                "success reused": round(b["success_rate"], 3),
                "backward independent": a["backward_passes"],
                "backward reused": b["backward_passes"],
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    (t_ind, tab_ind), (t_re, tab_re) = runs["independent"], runs["reused"]
    never_lower = bool((tab_re["success_rate"].values >= tab_ind["success_rate"].values).all())
    print(
        f"independent {t_ind:.1f} s, {int(tab_ind['backward_passes'].sum())} backward; reused {t_re:.1f} s, "
        f"{int(tab_re['backward_passes'].sum())} backward; speed-up {t_ind / t_re:.2f}x; success never lower: {never_lower}"
    )


if __name__ == "__main__":
    main()
