"""S12 turned around: the smallest eps at which EOT makes every photo read as the target under every S12 transform.

Run:  python benchmarks/bench_fool_eot.py [--eps 1/255,2/255,4/255,8/255,16/255] [--eot flip,crop,rotate,grayscale]
          [--eot-samples 8] [--images chelsea,coffee,rocket,motorcycle] [--target "space shuttle"] [--steps 100]
          [--confidence 0.9] [--all] [--threads N]

For each eps in increasing order, ``advkit.studies.fool.fool_study(..., eot=...)`` (what ``advkit fool --eot``
runs): the targeted attack without EOT, then through EOT, on each photo, and S12's survival table for both. Prints,
per eps, the share of photos that survive each transform before and after EOT (still read as the target while the
transformed clean photo is still right), the share still read as the target at all, the clean accuracy under the
transform, and the seconds; stops at the first eps where, after EOT, every photo is fooled and reads as the target
under every transform (``--all``: every eps). A photo whose transformed clean version the model already gets wrong
cannot count as survived, so the survival share may stay below 1 where the clean accuracy is.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit.models import load_model
from advkit.studies.fool import fool_study


def rates(survival: dict, column: str = "survival_rate") -> dict[str, float]:
    return {row["transform"]: row[column] for row in survival["table"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", default="chelsea,coffee,rocket,motorcycle")
    parser.add_argument("--target", default="space shuttle")
    parser.add_argument("--eps", default="1/255,2/255,4/255,8/255,16/255")
    parser.add_argument("--eot", default="flip,crop,rotate,grayscale")
    parser.add_argument("--eot-samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--confidence", type=float, default=None, help="success on the untransformed photo (0.9)")
    parser.add_argument("--eot-confidence", type=float, default=None, help="EOT's stopping confidence (0.99)")
    parser.add_argument("--all", action="store_true", help="run every eps, not only up to the first that survives")
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads), flush=True)
    model = load_model(args.model)
    print(
        f"EOT over {args.eot}, {args.eot_samples} draws per step; {args.steps} steps at most, step eps/10", flush=True
    )
    stop = {} if args.eot_confidence is None else {"eot_confidence": args.eot_confidence}
    for text in args.eps.split(","):
        eps = float(Fraction(text))
        start = time.perf_counter()
        study = fool_study(
            model, args.images.split(","), target=args.target, eps=eps, steps=args.steps, confidence=args.confidence,
            eot=args.eot, eot_samples=args.eot_samples, **stop,
        )  # fmt: skip
        s = study.summary()
        before, after = rates(s["before_eot"]["survival"]), rates(s["survival"])
        still = rates(s["survival"], "still_fooled_rate")
        clean = rates(s["survival"], "clean_accuracy")
        cells = "  ".join(f"{t} {before[t]:.2f} -> {after[t]:.2f} ({still[t]:.2f}; {clean[t]:.2f})" for t in after)
        steps = ", ".join(str(r["steps"]) for r in s["images"])
        print(
            f"eps {text}: fooled {s['before_eot']['n_success']} -> {s['n_success']}/{len(s['images'])}; survived "
            f"(before -> after EOT; still the target at all after EOT; clean still correct): {cells}; "
            f"EOT steps {steps}; attack {s['before_eot']['seconds_total']:.1f} s -> "
            f"{s['seconds_total']:.1f} s, {time.perf_counter() - start:.1f} s in all",
            flush=True,
        )
        if not args.all and s["n_success"] == len(s["images"]) and min(still.values()) == 1.0:
            print(f"smallest eps where every photo reads as the target under every transform: {text}")
            return
    print("no eps tried made every photo read as the target under every transform")


if __name__ == "__main__":
    main()
